"""Reading a table key whose partition the caller knows, with one store lookup.

The tracker and the rate windows work on batches, outside the context of any one event.
There, Faust's RocksDB store does not know a key's partition: `table.get(key)` asks
`key in store` and then `store[key]`, and each looks the key up in every partition's
database unless its LRU index knows the key (a new referral is in none of them: one
lookup per open database, twice). py-spy put those lookups at 8 % of a busy worker's
time. The caller does know the partition (a referral's is its tracked partition; a
window cell's is in its key), so one `get` on that partition's database does.

The memory store keeps Python values in one dict: a plain `get` on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from faust.stores.base import SerializedStore


def partition_reader(table: Any) -> Callable[[Any, int], Any]:
    """`read(key, partition)`: the table's value for `key`, or None, as `table.get(key)`
    answers for a table without a default (None)."""
    store = table.data
    if isinstance(store, SerializedStore) and hasattr(store, "_db_for_partition"):
        encode_key, decode_value = store._encode_key, store._decode_value
        database = store._db_for_partition

        def read_rocksdb(key: Any, partition: int) -> Any:
            raw = database(partition).get(encode_key(key))
            return None if raw is None else decode_value(raw)

        return read_rocksdb
    values = store.data

    def read_memory(key: Any, partition: int) -> Any:
        return values.get(key)

    return read_memory


class PartitionReader:
    """`reader(key, partition)` as `partition_reader(table)` answers, made on the first
    read: a table's store exists once the app runs, not when the agents are built."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self._read: Callable[[Any, int], Any] | None = None

    def __call__(self, key: Any, partition: int) -> Any:
        if self._read is None:
            self._read = partition_reader(self._table)
        return self._read(key, partition)
