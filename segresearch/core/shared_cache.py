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
    locks: int = 0  # loads under way, and the locks handed out by key_lock
    instances: int = 1


class LoadOnce(Generic[T]):
    """A single-flight cache: one load per key, however many callers arrive at once.

    ``maxsize`` bounds the number of entries and ``max_weight`` their total ``weigh`` (bytes,
    say); least recently used first out, and a value heavier than the whole budget is
    returned but not kept (it would evict everything else and still not fit), unless
    ``keep_newest``: then the newest value always stays, however heavy (a store whose every
    ``put`` must be answerable by a ``get``). Both None: unbounded, for a few large objects
    such as models. ``maxsize=0`` keeps nothing and only makes concurrent callers share one
    load (values that live elsewhere, e.g. in a file). ``on_evict`` releases what an evicted
    value holds (a video handle's decoder); it is not called by :meth:`clear`, since a
    cleared value may still be in use by whoever got it. ``name`` registers the cache (see
    the module docstring).

    Threads share a load through one future per key (:meth:`get`, or :meth:`claim` and
    :meth:`settle` for a caller that loads many keys in one call): its waiters get the
    loader's value or its error, and a failure is not kept.
    """

    def __init__(self, maxsize: int | None = None, *, name: str | None = None,
                 on_evict: Callable[[T], None] | None = None, max_weight: int | None = None,
                 weigh: Callable[[T], int] | None = None, keep_newest: bool = False) -> None:
        if (max_weight is None) != (weigh is None):
            raise ValueError("max_weight and weigh go together")
        self._items: OrderedDict[Hashable, T] = OrderedDict()
        self._weights: dict[Hashable, int] = {}
        self._weight = 0
        self.max_weight = max_weight
        self._weigh = weigh
        self.keep_newest = keep_newest
        self._flights: dict[Hashable, cf.Future[T]] = {}
        self._pending: dict[Hashable, asyncio.Future[T]] = {}
        self._key_locks: dict[Hashable, threading.Lock] = {}
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
            fut, mine = self._claim(key)
        if not mine:
            return fut.result()
        try:
            value = load()
        except BaseException as e:
            self.settle(key, fut, error=e)
            raise
        self.settle(key, fut, value)
        return value

    def claim(self, key: Hashable) -> tuple[cf.Future[T], bool]:
        """For a caller that loads several keys in one call (a batch of queries): (future,
        True) when it must load ``key`` and then :meth:`settle` it, whatever happens;
        (future, False) when the value is held or another caller is loading it:
        ``future.result()`` gives it, or raises that caller's error."""
        with self._lock:
            if key in self._items:
                held: cf.Future[T] = cf.Future()
                held.set_result(self._hit(key))
                return held, False
            return self._claim(key)

    def _claim(self, key: Hashable) -> tuple[cf.Future[T], bool]:
        """The load under way for ``key``, or a new one for this caller (who holds ``_lock``)."""
        fut = self._flights.get(key)
        if fut is not None:
            self._hits += 1  # served by another caller's load
            return fut, False
        self._misses += 1
        fut = self._flights[key] = cf.Future()
        return fut, True

    def settle(self, key: Hashable, fut: cf.Future[T], value: T | None = None, *,
               error: BaseException | None = None) -> None:
        """End the load that :meth:`claim` gave this caller: keep ``value`` and hand it to
        its waiters, or hand them ``error`` and keep nothing."""
        if error is None:
            self._store(key, value)  # type: ignore[arg-type]
        with self._lock:
            if self._flights.get(key) is fut:
                del self._flights[key]
        if error is None:
            fut.set_result(value)  # type: ignore[arg-type]
        else:
            fut.set_exception(error)

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
        if self.maxsize == 0:
            return
        weight = self._weigh(value) if self._weigh is not None else 0
        if self.max_weight is not None and weight > self.max_weight and not self.keep_newest:
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
            floor = 1 if self.keep_newest else 0
            while len(self._items) > floor and (
                    (self.maxsize is not None and len(self._items) > self.maxsize)
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

    def put(self, key: Hashable, value: T, *, replace: bool = False) -> None:
        """Keep ``value`` (computed by the caller) unless ``key`` is already held: then the
        held value is marked as used and stays, or with ``replace`` the new one takes its place
        (a newer way to remake the same image)."""
        with self._lock:
            if key in self._items and not replace:
                if self.maxsize is not None or self.max_weight is not None:
                    self._items.move_to_end(key)
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
            return self._key_locks.setdefault(key, threading.Lock())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._weights.clear()
            self._weight = 0
            self._key_locks.clear()  # loads under way finish and hand their waiters the value

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.name or "", len(self._items), self.maxsize, self._hits,
                              self._misses, self._evictions, self._weight,
                              len(self._flights) + len(self._pending) + len(self._key_locks))


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
