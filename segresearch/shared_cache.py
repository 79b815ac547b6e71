"""A process-wide registry of expensive objects (models, indexes) loaded once per key.

Many graph runs start at once and ask for the same checkpoint or index: the first caller
loads it, concurrent callers for that key wait for the same copy, and callers for other
keys are not held up while it loads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class LoadOnce(Generic[T]):
    def __init__(self) -> None:
        self._items: dict[Hashable, T] = {}
        self._loading: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                return self._items[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            value = load()
            with self._lock:
                self._items[key] = value
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
