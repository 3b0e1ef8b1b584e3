"""The deadline index kept on disk, in RocksDB, for workers whose tables are in RocksDB.

The in-memory index (schemas.deadlines) costs about 350 bytes per open referral (a key
string, a heap entry, a dict entry): with a million open referrals a third of a GiB that
grows with every referral, which is what a RocksDB store is chosen to avoid (issue 7:
bounded resident memory with RocksDB). This index answers the same questions with the
same results, from one RocksDB database per tracked partition whose memory is bounded by
its write buffers and block cache.

Two kinds of entries, keys only meaningful together:

- `k<referral key>` -> its deadline (8 bytes), to find and replace a referral's entry;
- `d<deadline, 8 bytes big-endian, offset to sort negatives first><referral key>` -> b"",
  in deadline order (then key order: the in-memory heap's order), for `pop_due`.

Popped entries are removed with one range deletion up to the last one taken, so the
next look from the start skips them at once instead of stepping over tombstones.

The database is rebuilt from the referral table whenever the tracker takes a partition
(as the in-memory one is): it is a cache of the table, never read after a restart.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable
from pathlib import Path

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch

_OFFSET = 1 << 63
_K, _D = b"k", b"d"

# Per partition's database: what RocksDB may hold in memory for it.
WRITE_BUFFER_BYTES = 2 << 20
BLOCK_CACHE_BYTES = 4 << 20
# Entries per write when an index is filled at once (load).
LOAD_BATCH = 10_000


def _enc(deadline: int) -> bytes:
    return (deadline + _OFFSET).to_bytes(8, "big")


def _dec(raw: bytes) -> int:
    return int.from_bytes(raw[:8], "big") - _OFFSET


def _options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(WRITE_BUFFER_BYTES)
    options.set_max_write_buffer_number(2)
    table = BlockBasedOptions()
    table.set_block_cache(Cache(BLOCK_CACHE_BYTES))
    table.set_cache_index_and_filter_blocks(True)  # inside the cache's bound, not beside it
    options.set_block_based_table_factory(table)
    return options


class DiskDeadlineIndex:
    """schemas.deadlines.DeadlineIndex's interface over a RocksDB database at `path`,
    which it empties when it opens it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), _options())
        self._count = 0
        self._loading, self._pending = WriteBatch(raw_mode=True), 0  # see load()

    def set(self, key: str, deadline: int | None) -> None:
        """Record `key`'s next deadline (None: nothing left to wait for)."""
        kb = key.encode("utf-8")
        old = self._db.get(_K + kb)
        if deadline is None:
            if old is not None:
                batch = WriteBatch(raw_mode=True)
                batch.delete(_K + kb)
                batch.delete(_D + old + kb)
                self._db.write(batch)
                self._count -= 1
            return
        new = _enc(deadline)
        if old == new:
            return
        batch = WriteBatch(raw_mode=True)
        if old is not None:
            batch.delete(_D + old + kb)
        else:
            self._count += 1
        batch.put(_K + kb, new)
        batch.put(_D + new + kb, b"")
        self._db.write(batch)

    def load(self, key: str, deadline: int | None) -> None:
        """Add a key while the index is rebuilt (each key once, into an index opened
        empty): written in large batches, without looking for an entry to replace;
        `loaded()` writes the last batch."""
        if deadline is None:
            return
        kb, enc = key.encode("utf-8"), _enc(deadline)
        self._loading.put(_K + kb, enc)
        self._loading.put(_D + enc + kb, b"")
        self._count += 1
        self._pending += 1
        if self._pending == LOAD_BATCH:
            self.loaded()

    def loaded(self) -> None:
        """End a rebuild (or a batch of it): write what `load` added."""
        if self._pending:
            self._db.write(self._loading)
            self._loading, self._pending = WriteBatch(raw_mode=True), 0

    def get(self, key: str) -> int | None:
        raw = self._db.get(_K + key.encode("utf-8"))
        return None if raw is None else _dec(raw)

    def pop_due(self, now: int, limit: int | None = None) -> list[str]:
        """Remove and return the keys whose deadline is before `now`, earliest first; at
        most `limit` of them (the rest stay due)."""
        due: list[bytes] = []
        last = b""
        it = self._db.iter()
        it.seek(_D)
        while it.valid() and (limit is None or len(due) < limit):
            entry = it.key()
            if not entry.startswith(_D) or _dec(entry[1:9]) >= now:
                break
            due.append(entry[9:])
            last = entry
            it.next()
        del it
        if not due:
            return []
        batch = WriteBatch(raw_mode=True)
        for kb in due:
            batch.delete(_K + kb)
        self._db.write(batch)
        self._db.delete_range(_D, last + b"\x00")
        self._count -= len(due)
        return [kb.decode("utf-8") for kb in due]

    def next(self) -> int | None:
        """The earliest deadline."""
        it = self._db.iter()
        it.seek(_D)
        entry = it.key() if it.valid() else None
        del it
        return _dec(entry[1:9]) if entry is not None and entry.startswith(_D) else None

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        """Close and delete the database (the partition is no longer this worker's)."""
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)


def disk_indexes(root: Path) -> Callable[[int], DiskDeadlineIndex]:
    """A factory of on-disk indexes under `root`, one directory per partition taken. The
    first call removes what an earlier run left there (a cache of the table, rebuilt on
    every take); each later one gets a directory of its own, so a partition taken again
    before its old index is closed never meets RocksDB's lock."""
    taken = itertools.count()

    def new_index(partition: int) -> DiskDeadlineIndex:
        n = next(taken)
        if n == 0:
            shutil.rmtree(root, ignore_errors=True)
        return DiskDeadlineIndex(root / f"p{partition}.{n}")

    return new_index
