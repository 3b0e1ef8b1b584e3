"""Event rates in 1-minute tumbling windows by event time, counted exactly once.

Faust's own windowed tables expire windows by wall clock (so last year's events, when
replayed, land in windows that are already dead) and forget expiry after recovery
(faust-streaming #385). reftrack keeps its windows in an ordinary Faust table instead,
with event time driving everything:

- A window cell belongs to one partition of the tracked topic and counts the distinct
  events of one (org_id, type, minute) seen there. With its count it keeps the highest
  offset it has counted (`max_offset`), in the same record, so the two never disagree. A
  redelivered message at or below it is already in the count. The tracker waits for
  every changelog write of a batch to be acknowledged before the batch's offsets can be
  committed (Faust itself does not), so after a crash a message is counted again only
  if its earlier count was lost with it.
- Each partition also has a progress record with its watermark and `closed_through`,
  the highest `max_offset` of any cell closed so far. A redelivered message whose cell
  is already closed (gone) and whose offset is at or below `closed_through` was counted
  in that closed cell. The record is written before the closed cells are deleted, in the
  same changelog partition, so a deletion never survives without the record that
  explains it.
- Only the accepted copy of an event counts (its position in the referral state).
  Duplicates never do.
- The partition's watermark is the latest occurred_at it has accepted. It is kept in the
  same table, so it survives recovery. A cell closes (is dropped) once the watermark
  passes its window end plus a grace period.
- An event later than that opens a new cell "segment" for the same minute. Each segment
  is sunk as its own row, keyed by the offset that opened it, and the view adds the
  segments up. A count never goes backwards, and nothing is counted twice.

Every function here is pure: the tracker supplies the table and the offsets.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

WINDOW_US = 60_000_000


def window_start(occurred_at: int) -> int:
    """The start (µs) of the 1-minute window holding this event time."""
    return occurred_at - occurred_at % WINDOW_US


def cell_key(partition: int, org_id: str, event_type: str, start: int) -> str:
    return f"w/{partition}/{start}/{org_id}/{event_type}"


def progress_key(partition: int) -> str:
    return f"progress/{partition}"


@dataclass(slots=True)
class WindowCell:
    org_id: str
    type: str
    window_start: int
    partition: int
    segment: int  # offset of the message that opened this segment
    count: int = 0
    max_offset: int = -1

    def count_once(self, offset: int) -> bool:
        """Count the accepted event read at `offset` unless this cell already has."""
        if offset <= self.max_offset:
            return False
        self.count += 1
        self.max_offset = offset
        return True

    @property
    def key(self) -> str:
        return cell_key(self.partition, self.org_id, self.type, self.window_start)

    @property
    def row_key(self) -> str:
        """Identity of this segment's row downstream."""
        return f"{self.partition}/{self.org_id}/{self.type}/{self.window_start}/{self.segment}"

    def closes_by(self, grace: int) -> int:
        """The watermark at which this window is closed."""
        return self.window_start + WINDOW_US + grace

    def to_dict(self) -> dict[str, Any]:
        return {
            "org_id": self.org_id,
            "type": self.type,
            "window_start": self.window_start,
            "partition": self.partition,
            "segment": self.segment,
            "count": self.count,
            "max_offset": self.max_offset,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WindowCell:
        return cls(**d)


@dataclass(slots=True)
class PartitionProgress:
    """Per tracked partition: the event-time watermark, and the highest offset counted in
    a window that has since closed."""

    watermark: int | None = None
    closed_through: int = -1

    def counted_in_a_closed_window(self, offset: int) -> bool:
        return offset <= self.closed_through

    def see(self, occurred_at: int) -> None:
        if self.watermark is None or occurred_at > self.watermark:
            self.watermark = occurred_at

    def close(self, cell: WindowCell) -> None:
        self.closed_through = max(self.closed_through, cell.max_offset)

    def to_dict(self) -> dict[str, Any]:
        return {"watermark": self.watermark, "closed_through": self.closed_through}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PartitionProgress:
        return cls(**d) if d else cls()


@dataclass(frozen=True, slots=True)
class Counted:
    """One accepted event, as the window counter needs it."""

    offset: int
    occurred_at: int
    org_id: str
    type: str


@dataclass
class BatchResult:
    """What one batch changes: write `cells`, then `progress`, then delete `closed` (the
    closed cells that are in the store); publish `emitted` (every segment the batch
    touched, in its final state)."""

    cells: dict[str, WindowCell]
    progress: PartitionProgress
    closed: list[str]
    emitted: list[WindowCell]
    reopened: int


@dataclass
class PartitionWindows:
    """The open windows of one tracked partition, and the counting rule."""

    partition: int
    grace_us: int
    open: dict[str, int] = field(default_factory=dict)  # key -> watermark that closes it
    _heap: list[tuple[int, str]] = field(default_factory=list)

    def track(self, key: str, closes_at: int) -> None:
        if self.open.get(key) != closes_at:
            self.open[key] = closes_at
            heapq.heappush(self._heap, (closes_at, key))

    def _due(self, watermark: int) -> list[str]:
        due = []
        while self._heap and self._heap[0][0] < watermark:
            closes_at, key = heapq.heappop(self._heap)
            if self.open.get(key) == closes_at:  # else a stale heap entry
                del self.open[key]
                due.append(key)
        return due

    def count(
        self,
        items: list[Counted],
        stored: Callable[[str], dict[str, Any] | None],
        progress: PartitionProgress,
    ) -> BatchResult:
        """Count a batch of accepted events (ascending offsets) against the stored cells.

        The index (`open`) holds every cell of the partition's store, so a key it lacks is
        not read from the store: most events open a cell of their own, and that read was
        wasted. The caller rebuilds the index from the table whenever a batch fails
        between counting and writing (streams/windows.py)."""
        live: dict[str, WindowCell] = {}
        gone: set[str] = set()  # closed during this batch
        in_store: set[str] = set()  # keys read from the store: only these need deleting
        emitted: dict[str, WindowCell] = {}
        reopened = 0

        def read(key: str) -> WindowCell | None:
            value = stored(key)
            if value is None:
                return None
            in_store.add(key)
            return WindowCell.from_dict(value)

        def load(key: str) -> WindowCell | None:
            if key in live:
                return live[key]
            if key in gone or key not in self.open:
                return None
            return read(key)

        for item in items:
            start = window_start(item.occurred_at)
            key = cell_key(self.partition, item.org_id, item.type, start)
            cell = load(key)
            if cell is None and not progress.counted_in_a_closed_window(item.offset):
                cell = WindowCell(item.org_id, item.type, start, self.partition, item.offset)
                wm = progress.watermark
                reopened += wm is not None and cell.closes_by(self.grace_us) < wm
            if cell is not None:  # None: redelivered, counted in a window already closed
                cell.count_once(item.offset)
                live[key] = cell
                gone.discard(key)
                emitted[cell.row_key] = cell
                self.track(key, cell.closes_by(self.grace_us))
            progress.see(item.occurred_at)
            assert progress.watermark is not None
            for due in self._due(progress.watermark):  # out of the index: read directly
                closing = live.pop(due, None) or read(due)
                if closing is not None:
                    progress.close(closing)
                gone.add(due)
        return BatchResult(
            cells=live,
            progress=progress,
            closed=sorted(gone & in_store),
            emitted=list(emitted.values()),
            reopened=reopened,
        )
