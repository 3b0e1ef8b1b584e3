"""The on-disk deadline index (streams/deadline_store.py, real RocksDB) answers exactly as
the in-memory one does, whatever the sequence of operations."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.deadlines import DeadlineIndex
from streams.deadline_store import LOAD_BATCH, DiskDeadlineIndex

KEYS = ["a", "b", "org-1/ref-9", "org-1/ref-10", "ü/ß", "z" * 40]

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("set"),
            st.sampled_from(KEYS),
            st.none() | st.integers(-(2**62), 2**62) | st.integers(-5, 100),
        ),
        st.tuples(
            st.just("pop"),
            st.integers(-10, 110) | st.integers(-(2**62), 2**62),
            st.none() | st.integers(1, 3),
        ),
        st.tuples(st.just("next"), st.none(), st.none()),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_same_answers_as_the_in_memory_index(steps: list[tuple[str, object, object]]) -> None:
    directory = Path(tempfile.mkdtemp(prefix="deadlines-"))
    disk = DiskDeadlineIndex(directory / "p0")
    memory = DeadlineIndex()
    try:
        for op, a, b in steps:
            if op == "set":
                assert isinstance(a, str)
                assert b is None or isinstance(b, int)
                disk.set(a, b)
                memory.set(a, b)
            elif op == "pop":
                assert isinstance(a, int)
                assert b is None or isinstance(b, int)
                assert disk.pop_due(a, b) == memory.pop_due(a, b)
            else:
                assert disk.next() == memory.next()
            assert len(disk) == len(memory)
            for key in KEYS:
                assert disk.get(key) == memory.get(key)
    finally:
        disk.close()
        shutil.rmtree(directory, ignore_errors=True)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.sampled_from(KEYS), st.none() | st.integers(-50, 150)),
    ops,
)
def test_a_rebuilt_index_answers_as_one_built_by_set(
    loaded: dict[str, int | None], steps: list[tuple[str, object, object]]
) -> None:
    """load()+loaded() (the rebuild from the table) gives, in memory and on disk, the
    index a set() per key gives; what follows answers alike."""
    directory = Path(tempfile.mkdtemp(prefix="deadlines-"))
    indexes = [DiskDeadlineIndex(directory / "p0"), DeadlineIndex()]
    by_set = DeadlineIndex()
    try:
        for key, deadline in loaded.items():
            for index in indexes:
                index.load(key, deadline)
            by_set.set(key, deadline)
        for index in indexes:
            index.loaded()
        for op, a, b in steps:
            if op == "set":
                assert isinstance(a, str)
                assert b is None or isinstance(b, int)
                for index in [*indexes, by_set]:
                    index.set(a, b)
            elif op == "pop":
                assert isinstance(a, int)
                assert b is None or isinstance(b, int)
                want = by_set.pop_due(a, b)
                assert [index.pop_due(a, b) for index in indexes] == [want, want]
            else:
                assert [index.next() for index in indexes] == [by_set.next()] * 2
            assert [len(index) for index in indexes] == [len(by_set)] * 2
    finally:
        indexes[0].close()  # type: ignore[union-attr]
        shutil.rmtree(directory, ignore_errors=True)


def test_a_large_rebuild_is_written_in_batches(tmp_path: Path) -> None:
    index = DiskDeadlineIndex(tmp_path / "p1")
    n = LOAD_BATCH * 2 + 7
    for i in range(n):
        index.load(f"org/ref-{i:06d}", i)
    index.loaded()
    assert len(index) == n and index.get("org/ref-000009") == 9
    assert index.pop_due(5) == [f"org/ref-{i:06d}" for i in range(5)]
    assert index.next() == 5 and len(index) == n - 5
    index.close()


def test_opening_empties_the_database_and_closing_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "p3"
    first = DiskDeadlineIndex(path)
    first.set("a", 10)
    first._db.close()  # a worker that died: its database stays behind
    second = DiskDeadlineIndex(path)  # rebuilt from the table, never trusted
    assert len(second) == 0 and second.get("a") is None and second.next() is None
    second.set("b", 5)
    assert second.pop_due(6) == ["b"]
    second.close()
    assert not path.exists()
