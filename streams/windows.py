"""The window counter: keeps schemas.windows cells in a Faust table, co-partitioned with
the tracked topic, and publishes each touched cell to the compacted rates topic, from
which the sink fills `event_rates` (summed per minute by the `event_rates_1m` view)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from faust.types import EventT, TableT, TopicT

from schemas.events import TrackedEvent
from schemas.snapshot import iso
from schemas.windows import (
    Counted,
    PartitionProgress,
    PartitionWindows,
    WindowCell,
    progress_key,
)
from streams.metrics import Metrics
from streams.table_writes import acting_for


@dataclass
class WindowCounter:
    table: TableT
    rates: TopicT
    metrics: Metrics
    grace_us: int
    # Open windows per partition, rebuilt from the table the first time a partition is
    # seen after a start or a rebalance.
    _partitions: dict[int, PartitionWindows] = field(default_factory=dict)

    async def count(self, accepted: list[tuple[EventT, TrackedEvent]]) -> None:
        by_partition: dict[int, list[tuple[EventT, TrackedEvent]]] = {}
        for item in accepted:
            by_partition.setdefault(item[0].message.partition, []).append(item)
        for partition, items in by_partition.items():
            items.sort(key=lambda item: item[0].message.offset)
            await self._count_partition(partition, items)

    def forget(self, partitions: set[int]) -> None:
        """Drop the open-window index of partitions this worker no longer owns."""
        for partition in partitions:
            self._partitions.pop(partition, None)

    def _windows(self, partition: int) -> PartitionWindows:
        windows = self._partitions.get(partition)
        if windows is None:
            windows = PartitionWindows(partition, self.grace_us)
            prefix = f"w/{partition}/"
            for key, value in self.table.items():
                if isinstance(key, str) and key.startswith(prefix):
                    windows.track(key, WindowCell.from_dict(value).closes_by(self.grace_us))
            self._partitions[partition] = windows
        return windows

    async def _count_partition(
        self, partition: int, items: list[tuple[EventT, TrackedEvent]]
    ) -> None:
        windows = self._windows(partition)
        progress_at = progress_key(partition)
        result = windows.count(
            [
                Counted(event.message.offset, tracked.occurred_at, tracked.org_id, tracked.type)
                for event, tracked in items
            ],
            self.table.get,
            PartitionProgress.from_dict(self.table.get(progress_at)),
        )
        # Cells, then the progress record, then deletions: see schemas/windows.py.
        with acting_for(items[-1][0]):
            for key, cell in result.cells.items():
                self.table[key] = cell.to_dict()
            self.table[progress_at] = result.progress.to_dict()
            for key in result.closed:
                if key in self.table:
                    del self.table[key]
        for cell in result.emitted:
            await self.rates.send(key=cell.row_key.encode(), value=_row(cell))
        self.metrics.windows_reopened.inc(result.reopened)
        self.metrics.windows_open.set(sum(len(w.open) for w in self._partitions.values()))


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
