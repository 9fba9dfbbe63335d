"""`BoundedCache`: a least-recently-used mapping with a size limit, for what the collator computes per row.

Training visits the same titles and images every epoch; the collator keeps what it derived from them (a title's
keyword string, an image's pixel tensor) here so that each is computed once while it fits. The limit is a number
of entries or, with `size_of`, a total size (bytes of pixel tensors), so the memory a run spends is bounded
whatever the size of the shop; past it the least recently used entries go, and the run only loses hits.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class BoundedCache:
    """An LRU cache holding at most `limit` units, where an entry costs `size_of(value)` units (default 1).

    Args:
        limit: the most units held (entries, or bytes with a `size_of` that returns bytes); 0 holds nothing.
        size_of: the cost of one value.
    """

    def __init__(self, limit: int, size_of: Callable[[Any], int] | None = None):
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ValueError(f"A cache limit must be a non-negative integer, got {limit!r}.")
        self.limit = limit
        self.size_of = size_of or (lambda value: 1)
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        """The value under `key` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Hashable, value: Any) -> None:
        """Keep `value` under `key`, dropping the least recently used entries beyond the limit. A value larger
        than the whole limit is not kept."""
        cost = self.size_of(value)
        if cost > self.limit:
            return
        previous = self._entries.pop(key, None)
        if previous is not None:
            self.size -= previous[1]
        self._entries[key] = (value, cost)
        self.size += cost
        while self.size > self.limit:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.size -= dropped

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries


__all__ = ["BoundedCache"]
