"""A process-wide registry of expensive objects (models, indexes) loaded once per key.

Many graph runs start at once and ask for the same checkpoint or index: the first caller
loads it, concurrent callers for that key wait for the same copy, and callers for other
keys are not held up while it loads. With ``maxsize`` it is a bounded LRU for many small
values (resized frames, query vectors): the samples of an RL group start together and would
otherwise all miss a plain cache and compute the same value at once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class LoadOnce(Generic[T]):
    def __init__(self, maxsize: int | None = None) -> None:
        self._items: OrderedDict[Hashable, T] = OrderedDict()
        self._loading: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()
        self.maxsize = maxsize

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                if self.maxsize is not None:
                    self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            try:
                value = load()
            finally:
                if self.maxsize is not None:
                    # Bounded caches see many keys: keep no lock per key once it is loaded
                    # (a waiter still holds the old lock and then finds the value).
                    with self._lock:
                        if self._loading.get(key) is key_lock:
                            del self._loading[key]
            with self._lock:
                self._items[key] = value
                if self.maxsize is not None:
                    while len(self._items) > self.maxsize:
                        self._items.popitem(last=False)
            return value

    def has(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def key_lock(self, key: Hashable) -> threading.Lock:
        """A lock for other once-per-key work on the same keys (e.g. building an index)."""
        with self._lock:
            return self._loading.setdefault(key, threading.Lock())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._loading.clear()
