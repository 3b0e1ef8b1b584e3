"""The window counter: keeps schemas.windows cells in a Faust table, co-partitioned with
the tracked topic, and publishes each touched cell to the compacted rates topic, from
which the sink fills `event_rates` (summed per minute by the `event_rates_1m` view)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from faust.types import EventT, TableT, TopicT

from schemas.events import TrackedEvent
from schemas.snapshot import iso
from schemas.windows import PartitionProgress, WindowCell, cell_key, progress_key, window_start
from streams.metrics import Metrics
from streams.table_writes import acting_for


@dataclass
class WindowCounter:
    table: TableT
    rates: TopicT
    metrics: Metrics
    grace_us: int
    # Open cells per partition: key -> watermark at which it closes. Rebuilt from the
    # table the first time a partition is seen after a start or a rebalance.
    _open: dict[int, dict[str, int]] = field(default_factory=dict)

    async def count(self, accepted: list[tuple[EventT, TrackedEvent]]) -> None:
        by_partition: dict[int, list[tuple[EventT, TrackedEvent]]] = {}
        for item in accepted:
            by_partition.setdefault(item[0].message.partition, []).append(item)
        for partition, items in by_partition.items():
            items.sort(key=lambda item: item[0].message.offset)
            await self._count_partition(partition, items)

    def forget(self, partitions: set[int]) -> None:
        """Drop the open-cell index of partitions this worker no longer owns."""
        for partition in partitions:
            self._open.pop(partition, None)

    def _index(self, partition: int) -> dict[str, int]:
        index = self._open.get(partition)
        if index is None:
            index = {}
            prefix = f"w/{partition}/"
            for key, value in self.table.items():
                if isinstance(key, str) and key.startswith(prefix):
                    index[key] = WindowCell.from_dict(value).closes_by(self.grace_us)
            self._open[partition] = index
        return index

    async def _count_partition(
        self, partition: int, items: list[tuple[EventT, TrackedEvent]]
    ) -> None:
        index = self._index(partition)
        progress_at = progress_key(partition)
        progress = PartitionProgress.from_dict(self.table.get(progress_at))
        touched: dict[str, WindowCell] = {}
        for event, tracked_event in items:
            offset = event.message.offset
            progress.see(tracked_event.occurred_at)
            start = window_start(tracked_event.occurred_at)
            key = cell_key(partition, tracked_event.org_id, tracked_event.type, start)
            cell = touched.get(key)
            if cell is None:
                stored = self.table.get(key)
                if stored is not None:
                    cell = WindowCell.from_dict(stored)
                elif progress.counted_in_a_closed_window(offset):
                    continue  # redelivered; its count lives in a window already closed
                else:
                    cell = WindowCell(
                        tracked_event.org_id, tracked_event.type, start, partition, segment=offset
                    )
                    wm = progress.watermark
                    if wm is not None and cell.closes_by(self.grace_us) < wm:
                        self.metrics.windows_reopened.inc()  # later than the grace period
                touched[key] = cell  # re-published even when nothing new was counted
            cell.count_once(offset)
        watermark = progress.watermark
        assert watermark is not None  # items is never empty
        # Cells, then the progress record, then deletions: see schemas/windows.py.
        with acting_for(items[-1][0]):
            for key, cell in touched.items():
                self.table[key] = cell.to_dict()
                index[key] = cell.closes_by(self.grace_us)
            closing = [k for k, closes_at in index.items() if closes_at < watermark]
            for key in closing:
                stored = self.table.get(key)
                if stored is not None:
                    progress.close(WindowCell.from_dict(stored))
            self.table[progress_at] = progress.to_dict()
            for key in closing:
                del index[key]
                if key in self.table:
                    del self.table[key]
        for cell in touched.values():
            await self.rates.send(key=cell.row_key.encode(), value=_row(cell))
        self.metrics.windows_open.set(sum(len(i) for i in self._open.values()))


def _row(cell: WindowCell) -> bytes:
    return json.dumps(
        {
            "org_id": cell.org_id,
            "type": cell.type,
            "window_start": iso(cell.window_start),
            "partition": cell.partition,
            "segment": cell.segment,
            "events": cell.count,
            "version": cell.max_offset,
        }
    ).encode()
