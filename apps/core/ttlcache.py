"""A small thread-safe in-process cache with expiry.

Used only for data whose truth is in Postgres and where a few seconds of
staleness is an explicit, configured trade (API key lookups, the model catalog):
it keeps those reads off the submission hot path. Never used for limits or
counters, which must be atomic across processes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")

_MISSING = object()


class TTLCache(Generic[V]):
    def __init__(self, *, maxsize: int = 10_000) -> None:
        self._data: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()
        self._maxsize = maxsize

    def get_or_load(self, key: Hashable, ttl: float, load: Callable[[], V]) -> V:
        if ttl <= 0:
            return load()
        now = time.monotonic()
        with self._lock:
            entry = self._data.get(key)
            if entry is not None and entry[0] > now:
                return entry[1]
        # Loaded outside the lock: two threads may both load on a miss, which is
        # cheaper than serialising every miss behind one query.
        value = load()
        with self._lock:
            self._data[key] = (now + ttl, value)
            self._data.move_to_end(key)
            while len(self._data) > self._maxsize:
                self._data.popitem(last=False)
        return value

    def discard(self, key: Hashable) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
