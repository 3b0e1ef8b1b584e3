"""partition_reader answers as `table.get` does, for both stores (real Faust tables; the
RocksDB store on disk), with one lookup in the partition's own database."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest

from streams.table_reads import PartitionReader, partition_reader
from streams.table_writes import acting_for


class _Event:  # what acting_for needs: a message with a partition
    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


def _tables(store: str, tmp_path: Path) -> tuple[Any, Any]:
    app = faust.App("reads-test", broker="kafka://127.0.0.1:1", store=store, datadir=tmp_path)
    records = app.Table("records", default=None, partitions=4, key_type=str, value_type=bytes)
    cells = app.Table(
        "cells",
        default=None,
        partitions=4,
        schema=faust.Schema(key_serializer="json", value_serializer="json"),
    )
    return records, cells


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_reads_what_the_table_holds_from_the_keys_partition(store: str, tmp_path: Path) -> None:
    records, cells = _tables(store, tmp_path)
    written = {
        (records, "org/R-1", 0): b'{"state": 1}',
        (records, "org/R-2", 3): b'{"state": 2}',
        (cells, "w/1/org/t/5", 1): {"count": 3, "org_id": "org"},
    }
    for (table, key, partition), value in written.items():
        with acting_for(_Event(partition)):  # type: ignore[arg-type]
            table.data[key] = value
    for (table, key, partition), value in written.items():
        read = partition_reader(table)
        assert read(key, partition) == value == table.get(key)
    assert partition_reader(records)("org/R-404", 0) is None
    assert records.get("org/R-404") is None
    assert partition_reader(cells)("w/1/none", 1) is None


def test_rocksdb_reads_only_the_named_partitions_database(tmp_path: Path) -> None:
    records, _ = _tables("rocksdb://", tmp_path)
    with acting_for(_Event(2)):  # type: ignore[arg-type]
        records.data["org/R-9"] = b"x"
    read = partition_reader(records)
    assert read.__name__ == "read_rocksdb"
    assert read("org/R-9", 2) == b"x"
    assert read("org/R-9", 1) is None  # a key lives in its own partition's database only
    assert PartitionReader(records)("org/R-9", 2) == b"x"  # the same, made on first read
