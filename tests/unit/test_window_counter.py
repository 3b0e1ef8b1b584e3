"""streams/windows.WindowCounter: a batch that fails between counting and writing leaves
no index ahead of the table (PartitionWindows.count trusts the index to skip reads)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest

from schemas.events import TrackedEvent
from schemas.windows import WINDOW_US, WindowCell
from streams.metrics import Metrics
from streams.table_writes import acting_for
from streams.windows import WindowCounter

T0 = 1_735_689_600_000_000  # a minute boundary


class _Event:  # what the counter reads of an event: its message's partition and offset
    def __init__(self, partition: int, offset: int) -> None:
        self.message = SimpleNamespace(partition=partition, offset=offset)


class _FailingOutbox:
    """The rates never reach the broker: the batch fails before any table write."""

    def __init__(self) -> None:
        self.added: list[bytes] = []

    async def add(self, topic: Any, key: bytes, value: bytes, partition: int) -> None:
        self.added.append(key)

    async def flush(self) -> None:
        raise ConnectionError("broker gone")


def _event(offset: int, at: int) -> tuple[Any, TrackedEvent]:
    tracked = TrackedEvent(f"e-{offset}", "acme", "R-1", "referral.created", at, "ehr")
    return _Event(1, offset), tracked


def test_a_batch_failing_before_its_writes_has_the_index_rebuilt(tmp_path: Path) -> None:
    app = faust.App("windows-test", broker="kafka://127.0.0.1:1", datadir=tmp_path)
    table = app.Table("cells", default=None, partitions=4)
    stored = WindowCell("acme", "referral.created", T0, 1, segment=0, count=1, max_offset=0)
    with acting_for(_Event(1, 0)):  # type: ignore[arg-type]
        table.data[stored.key] = stored.to_dict()
    counter = WindowCounter(table, rates=None, metrics=Metrics(), grace_us=0)  # type: ignore[arg-type]
    assert set(counter._windows(1).open) == {stored.key}

    later = T0 + 2 * WINDOW_US  # closes the stored cell, in the index only
    outbox = _FailingOutbox()
    with pytest.raises(ConnectionError):
        asyncio.run(counter.count([_event(1, later)], outbox))  # type: ignore[arg-type]
    assert outbox.added  # it had counted
    assert 1 not in counter._partitions  # forgotten: rebuilt at the next batch
    assert counter._windows(1).open == {stored.key: stored.closes_by(0)}  # as the table
