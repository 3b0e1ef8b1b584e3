"""The window counter: keeps schemas.windows cells in a Faust table, co-partitioned with
the tracked topic, and publishes each touched cell to the compacted rates topic, from
which the sink fills `event_rates` (summed per minute by the `event_rates_1m` view)."""

from __future__ import annotations

from dataclasses import dataclass, field

from faust.types import EventT, TableT, TopicT

from schemas import jsoncodec
from schemas.events import TrackedEvent
from schemas.snapshot import iso
from schemas.windows import (
    BatchResult,
    Counted,
    PartitionProgress,
    PartitionWindows,
    WindowCell,
    progress_key,
)
from streams.metrics import Metrics
from streams.publish import Outbox
from streams.table_reads import PartitionReader
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

    def __post_init__(self) -> None:
        self._read = PartitionReader(self.table)  # one lookup per read: streams/table_reads.py

    async def count(self, accepted: list[tuple[EventT, TrackedEvent]], outbox: Outbox) -> None:
        """Count a batch: compute every partition's result, publish the touched segments
        and wait for the broker to acknowledge them, and only then change the table.

        Faust writes table changelogs through a buffer of its own, so a changelog record
        can reach the broker before a rates record sent earlier. If the deletion of a
        closed cell landed and its final row did not (a SIGKILL between the two), the
        redelivered events would find the cell closed and the row would never be sent
        again. Acknowledged rows first, table second: a crash leaves either both or a
        table that still recounts (and re-sends the same rows, which are idempotent)."""
        by_partition: dict[int, list[tuple[EventT, TrackedEvent]]] = {}
        for item in accepted:
            by_partition.setdefault(item[0].message.partition, []).append(item)
        try:
            results = []
            for partition, items in by_partition.items():
                items.sort(key=lambda item: item[0].message.offset)
                results.append((partition, items, self._count_partition(partition, items)))
            for _, _, result in results:
                for cell in result.emitted:
                    # a cell's rows go to its tracked partition's number: one per key
                    await outbox.add(self.rates, cell.row_key.encode(), _row(cell), cell.partition)
            await outbox.flush()
            for partition, items, result in results:
                self._write(partition, items[-1][0], result)
        except BaseException:
            # counting moved the index ahead of the table: rebuild it from the table when
            # the batch is read again (PartitionWindows.count trusts it to skip reads)
            self.forget(set(by_partition))
            raise
        self.metrics.windows_open.set(sum(len(w.open) for w in self._partitions.values()))

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

    def _count_partition(
        self, partition: int, items: list[tuple[EventT, TrackedEvent]]
    ) -> BatchResult:
        return self._windows(partition).count(
            [
                Counted(event.message.offset, tracked.occurred_at, tracked.org_id, tracked.type)
                for event, tracked in items
            ],
            lambda key: self._read(key, partition),
            PartitionProgress.from_dict(self._read(progress_key(partition), partition)),
        )

    def _write(self, partition: int, last: EventT, result: BatchResult) -> None:
        """Cells, then the progress record, then deletions: see schemas/windows.py."""
        with acting_for(last):
            for key, cell in result.cells.items():
                self.table[key] = cell.to_dict()
            self.table[progress_key(partition)] = result.progress.to_dict()
            for key in result.closed:  # each one read from the store by this batch
                del self.table[key]
        self.metrics.windows_reopened.inc(result.reopened)


def _row(cell: WindowCell) -> bytes:
    return jsoncodec.dumps(
        {
            "org_id": cell.org_id,
            "type": cell.type,
            "window_start": iso(cell.window_start),
            "partition": cell.partition,
            "segment": cell.segment,
            "events": cell.count,
            "version": cell.max_offset,
        }
    )
