"""A bounded least-recently-used map (the engine's conditioning caches, the speaker store's memory)."""

from __future__ import annotations

from collections import OrderedDict


class LRU(OrderedDict):
    """At most `size` entries; `get_fresh` marks an entry used, `put` evicts the least recently used."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_fresh(self, key):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return None

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
