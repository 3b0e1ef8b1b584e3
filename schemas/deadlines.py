"""The deadline index: the next instant each referral's flags could change by time alone.

A tick asks for the referrals whose deadline has passed; it costs in proportion to those
(plus entries made stale by a later `set`), never to the number of open referrals. Pure:
a min-heap with lazy deletion, one per tracked partition, rebuilt from the referral table
after a start or a rebalance.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field


@dataclass
class DeadlineIndex:
    _heap: list[tuple[int, str]] = field(default_factory=list)
    _current: dict[str, int] = field(default_factory=dict)

    def set(self, key: str, deadline: int | None) -> None:
        """Record `key`'s next deadline (None: nothing left to wait for)."""
        if deadline is None:
            self._current.pop(key, None)
            return
        if self._current.get(key) == deadline:
            return
        self._current[key] = deadline
        heapq.heappush(self._heap, (deadline, key))
        if len(self._heap) > 2 * len(self._current) + 1024:
            self._compact()

    def load(self, key: str, deadline: int | None) -> None:
        """Add a key while the index is rebuilt: no heap push; `loaded()` orders them all
        at once (one heapify instead of a push per key)."""
        if deadline is not None:
            self._current[key] = deadline

    def loaded(self) -> None:
        """End a rebuild: order what `load` added."""
        self._heap = [(deadline, key) for key, deadline in self._current.items()]
        heapq.heapify(self._heap)

    def get(self, key: str) -> int | None:
        return self._current.get(key)

    def pop_due(self, now: int, limit: int | None = None) -> list[str]:
        """Remove and return the keys whose deadline is before `now` (a flag holds once
        now > deadline), earliest first; at most `limit` of them (the rest stay due)."""
        due: list[str] = []
        heap, current = self._heap, self._current
        while heap and heap[0][0] < now and (limit is None or len(due) < limit):
            deadline, key = heapq.heappop(heap)
            if current.get(key) == deadline:
                del current[key]
                due.append(key)
        return due

    def next(self) -> int | None:
        """The earliest live deadline (drops stale heap entries on the way)."""
        while self._heap and self._current.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def close(self) -> None:
        """Nothing to release (the on-disk index, streams/deadline_store.py, has)."""

    def __len__(self) -> int:
        return len(self._current)

    def _compact(self) -> None:
        self._heap = [(d, k) for k, d in self._current.items()]
        heapq.heapify(self._heap)
