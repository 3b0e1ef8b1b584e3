"""Event rates in 1-minute tumbling windows by event time, counted exactly once.

Faust's own windowed tables expire windows by wall clock (so last year's events, when
replayed, land in windows that are already dead) and forget expiry after recovery
(faust-streaming #385). reftrack keeps its windows in an ordinary Faust table instead,
with event time driving everything:

- A window cell belongs to one partition of the tracked topic and counts the distinct
  events of one (org_id, type, minute) seen there. The cell remembers the highest offset
  it has counted (`max_offset`): a message at or below it is already in the count. Faust
  flushes every changelog write before it commits an offset, so after a crash a
  redelivered message is counted again only if its earlier count was lost with it.
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

from dataclasses import dataclass
from typing import Any

WINDOW_US = 60_000_000


def window_start(occurred_at: int) -> int:
    """The start (µs) of the 1-minute window holding this event time."""
    return occurred_at - occurred_at % WINDOW_US


def cell_key(partition: int, org_id: str, event_type: str, start: int) -> str:
    return f"w/{partition}/{start}/{org_id}/{event_type}"


def watermark_key(partition: int) -> str:
    return f"watermark/{partition}"


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
