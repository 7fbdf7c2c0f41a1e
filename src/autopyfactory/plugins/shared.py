"""Reference-counted sharing of costly, thread-safe clients (SSH connections, cloud API clients):
one per key, however many queues and pollers use it; the last ``release`` closes it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar


class Closeable(Protocol):
    def close(self) -> None: ...


T = TypeVar("T", bound=Closeable)


class SharedPool(Generic[T]):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[Hashable, tuple[T, int]] = {}

    def acquire(self, key: Hashable, create: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                item, refs = self._items[key]
                self._items[key] = (item, refs + 1)
                return item
            item = create()
            self._items[key] = (item, 1)
            return item

    def release(self, item: T) -> None:
        with self._lock:
            for key, (held, refs) in list(self._items.items()):
                if held is item:
                    if refs > 1:
                        self._items[key] = (held, refs - 1)
                        return
                    del self._items[key]
                    break
            else:
                return
        item.close()  # outside the lock: closing an SSH connection may take a while
